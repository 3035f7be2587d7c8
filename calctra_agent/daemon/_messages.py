"""What the daemon tells the owner to do, where more than one place says it."""

TOKEN_REFUSED = (
    "the platform refused this machine's agent token (revoked, or its resource deleted); "
    "run `calctra-agent login` again"
)
