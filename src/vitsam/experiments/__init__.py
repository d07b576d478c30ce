"""The paper's tables as experiments: each table is a set of runs (presets at ImageNet
scale and on Fashion-MNIST), run by one command and reported beside the paper's figures.

    vitsam paper --list
    vitsam paper data-efficiency --scale small --out runs/paper
    vitsam paper adversarial --scale imagenet --data folder:/data/imagenet

``vitsam.experiments.presets`` registers the presets (imported by ``vitsam.presets``);
``vitsam.experiments.tables`` defines the tables; ``vitsam.experiments.runs`` runs them
(finished runs reused, interrupted ones resumed); ``vitsam.experiments.cli`` is the command.
"""
