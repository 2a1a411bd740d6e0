"""The report's words: one module per language (``en``, ``zh``) for the lab report, and ``article_en`` /
``article_zh`` for the article edition. Only sentences live here; rules live in :mod:`lorafam.report.advice`
and :mod:`lorafam.report.claims`, assembly in :mod:`lorafam.report.blocks` and :mod:`lorafam.report.article`."""
