"""dcgen: learn and mass-produce 4D semantic occupancy scenes (DynamicCity) on Ray.

Importing the package reads no file and starts nothing; heavy modules are imported where they are used.
"""

__version__ = "0.1.0"
