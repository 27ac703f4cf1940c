"""Supernets of the three searched families and the heads and blocks they share."""
