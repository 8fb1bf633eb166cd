"""Transformations from parsed rows to training-ready tables, fitted by a distributed first pass.

Each family (tabular click data, LIBSVM sparse vectors, ratings) follows the same
three steps, which is what lets one driver fan out any format:

``summarize``  (worker, pass 1) the statistics of one split's training rows: small ones
               in the JSON result, large ones (bucket counts, id lists) in side files;
``fit``        (driver) merge the summaries into a fitted transform, writing what is too
               large for the manifest under ``<output>/transform/``;
``usable``     the parsed rows of a block it can take (LIBSVM: rows whose indices fall in
               the fitted feature space; the others join the block's rejected rows);
``apply``      (worker, pass 2) rows to an Arrow table of the shard schema.

A family with ``finishes_after_shuffle`` (tabular) splits ``apply`` in two:
``features`` (pass 1, needs no fit) and ``finish`` (as shards are combined), which
saves a second parse of the input.

A fitted transform's JSON, with the artifacts it names, is all that prediction needs
to turn new raw rows into the same features.
"""
