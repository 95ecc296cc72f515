"""Business rules. No Flask: every function takes a SQLAlchemy Session and plain values."""
