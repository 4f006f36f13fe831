"""Tune trainables: the modular trainer as a function trainable, and the DeepSpeed trainer as a
Ray Train V2 run inside one."""
