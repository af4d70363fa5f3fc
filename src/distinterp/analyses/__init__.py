"""Analyses over a store: LLC, BIF, susceptibilities and their covariance kernels."""
