"""`torchdoctor chat`: the review session in a terminal (prompt_toolkit for input, rich for
output), on this machine's files or on a server's session."""
