"""The rotation loop: a Secret or Config whose value changes rolls the services using it."""
