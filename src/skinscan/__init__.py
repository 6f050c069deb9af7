"""skinscan: offline, on-device skin-lesion screening (a screening aid, not a diagnosis)."""

__version__ = "0.1.0"

DISCLAIMER = (
    "skinscan is a screening aid, not a diagnosis. Whatever it shows, see a dermatologist "
    "about any lesion that worries you or changes."
)
