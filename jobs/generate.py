"""Ray job entrypoint for `factory generate`.

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/generate.py jobs/specs/demo.yaml [--resume]

Inside a Ray job, RAY_ADDRESS is set, so the driver joins the job's cluster.
"""

from factory.cli import main

if __name__ == "__main__":
    import sys

    sys.argv[1:1] = ["generate"]
    main()
