"""``python -m lightning_ot {fit,validate,test,predict} [--recipe NAME] [LightningCLI arguments]``.

Lightning's usual subcommands on this project's CLI (:mod:`lightning_ot.fit`): train with ``fit``,
evaluate a checkpoint with ``validate`` / ``test`` (``--ckpt_path``), and ``predict`` to write each
input's prediction, runner-up, margin and certified radius to ``predictions.csv``.
"""

from lightning_ot.fit import main

if __name__ == "__main__":
    main(default_subcommand=None, prog="python -m lightning_ot")
