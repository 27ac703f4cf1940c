"""The surgeon: decisions -> plan -> static graph of plain layers, verified against the supernet."""
