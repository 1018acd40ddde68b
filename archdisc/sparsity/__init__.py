"""Sparsity: the structural groups the regularizer sees, sparse initialisation, the
lambda controller."""
