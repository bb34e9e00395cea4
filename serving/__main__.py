"""`python -m serving`: run the API in the foreground with the settings of `recsys serve start` (or file + env)."""

from serving.runner import run, settings_from_environment

if __name__ == "__main__":
    run(settings_from_environment())
