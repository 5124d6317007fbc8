"""Teachers: the large models that write key-point rationales, and the teacher simulator that
stands in for them offline (`services.teachers.simulator`)."""
