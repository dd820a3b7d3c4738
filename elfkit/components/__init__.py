"""Built-in components, one kind per subpackage; each registers itself through the
same ``elfkit_register_components`` hook a third-party plugin uses."""
