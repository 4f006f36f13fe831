"""Modular arithmetic (add, sub, mul, div, x²+y² mod p): the task, its models and its trainer."""
