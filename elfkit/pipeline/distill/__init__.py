"""Progressive distillation: the teacher (``teacher``), the rounds (``stage``) and the teacher-vs-student
report (``compare``). Imports nothing, so ``elfkit.pipeline.distill.teacher`` loads without the loop."""
