"""The model registry in the store: versions and cards, aliases, the one promotion rule."""
