"""SQLAlchemy 2.x models, sessions and job service functions. Imports no torch and no Flask."""
