def destroy_model_parallel() -> None:
    return None


def destroy_distributed_environment() -> None:
    return None
