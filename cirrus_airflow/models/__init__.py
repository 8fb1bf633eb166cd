"""Model maths, pure numpy: shared by the Lambda workers, the evaluator and prediction."""
