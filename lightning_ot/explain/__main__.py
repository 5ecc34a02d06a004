"""``python -m lightning_ot.explain``: the command lives in the Lightning layer, imported only when run."""

if __name__ == "__main__":
    from lightning_ot.explain_cli import main

    main()
