"""msgspec Structs for both wire protocols. No logic lives here."""
