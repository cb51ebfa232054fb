"""The whole-image method family (Oquab et al. 2015's successor to the patches): the photo
through the backbone as a fully convolutional network, a classifier at every position of its
last feature map, the positions pooled into one score per class, trained on image labels.

``pooling`` and ``loss`` are pure; ``inputs`` turns photos into the network's canvases;
``model`` is the network; ``cache`` stores a frozen backbone's maps; ``run`` trains and
evaluates (``python -m voc_jax.train`` with ``method = "image"``).
"""
