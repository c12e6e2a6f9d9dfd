"""Where the real dataset would download from; the example overwrites these, nothing reads them."""

URL: dict[str, str] = {}
