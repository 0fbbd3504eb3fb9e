"""The commands above the stages: the whole chain in a row (:mod:`pipeline.chain`) and what reads any
kind of run (:mod:`pipeline.evaluate`). Imports point down: ``pipeline → teacher, student, distill``."""
