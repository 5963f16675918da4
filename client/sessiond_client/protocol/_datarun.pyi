# The optional compiled DATA loop (_datarun.c; see codec.take_data_run).

def take(
    data: bytes | memoryview, pos: int, received: int, limit: int, inbox: list[bytes], /
) -> tuple[int, int, int]: ...
