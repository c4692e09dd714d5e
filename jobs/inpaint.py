"""Ray job entrypoint for `factory inpaint`.

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/inpaint.py jobs/specs/inpaint-demo.yaml [--resume]

Inside a Ray job, RAY_ADDRESS is set, so the driver joins the job's cluster.
"""

from factory.cli import main

if __name__ == "__main__":
    import sys

    sys.argv[1:1] = ["inpaint"]
    main()
