"""`python -m serving`: run the API in the foreground with the settings of `recsys serve start` (or file + env)."""

from infra.noise import quiet_third_party_noise
from infra.processes import received_settings
from serving.runner import run

if __name__ == "__main__":
    quiet_third_party_noise()
    run(received_settings())
