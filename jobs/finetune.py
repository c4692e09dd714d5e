"""Ray job entrypoint for `factory finetune` (single process; for several GPUs use `accelerate launch`).

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/finetune.py jobs/specs/finetune-demo.yaml [--resume]
"""

from factory.cli import main

if __name__ == "__main__":
    import sys

    sys.argv[1:1] = ["finetune"]
    main()
