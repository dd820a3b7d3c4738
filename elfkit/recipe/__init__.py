"""Recipes: typed YAML documents naming registry components."""
