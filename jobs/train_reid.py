"""Ray job entrypoint for `factory train-reid` (one process; the model trains where the job's driver runs).

    ray job submit --address http://HEAD:8265 --working-dir . \
        --entrypoint-num-gpus 1 -- python jobs/train_reid.py jobs/specs/reid-demo.yaml [--out DIR]

Evaluate a trained model again (e.g. with DLCR refinement): `factory eval-reid SPEC`.
"""

from factory.cli import main

if __name__ == "__main__":
    import sys

    sys.argv[1:1] = ["train-reid"]
    main()
