"""One module per provider behind the small interface of base.py."""
