"""Pure tensor math: the flow path, parameterisation conversions, time distributions.

Nothing here holds state or reads configs, so every function is testable against
closed-form cases.
"""
