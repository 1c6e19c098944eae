"""The front half: model zoo, trace, op kinds, channel rules, channel IR, scope, counting."""
