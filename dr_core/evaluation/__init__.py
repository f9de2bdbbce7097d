"""Inference, metrics with patient-bootstrap intervals, grade cut-points and operating points, fellow-eye
blending, reports and figures, cross-validation pooling, grading raw photos and Grad-CAM."""
