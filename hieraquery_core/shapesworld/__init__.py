"""ShapesWorld v1: the project's synthetic miniature world (numpy + Pillow, no torch).

Specification: ``/work/shared/notes/shapesworld-v1.md``; project decisions: ``docs/shapesworld.md``.
"""

from . import spec
from .edits import (EditTriplet, Instruction, apply_instruction, check_instruction, edit_triplets,
                    parse_instruction, sample_edit)
from .evaluate import (DetectedObject, classify_shape, cross_scale_consistency, EDIT_OUTCOMES, RELATIONS, edit_accuracy, edit_collateral, edit_correct, edit_outcome, edit_outcomes,
                       attribute_accuracy, geneval, label_components, parse_image, reconstruction_accuracy, reconstruction_correct,
                       relation_placement, scale_agreement, score_prompt, shape_binding)
from .prompts import (ALL_PROMPTS, HELDOUT_PROMPTS, TRAIN_PROMPTS, ObjectSpec, Requirement, caption,
                      heldout_pairs, heldout_prompts, is_held_out, is_held_out_scene, parse_prompt,
                      sample_pair, sample_prompt, scene_for_prompt, scene_satisfies, train_pairs, with_colours)
from .render import downscale, render, render_scales, shape_mask
from .scene import (PlacementError, Scene, SceneObject, box_gap, place_object, place_objects, random_scene,
                    relation_holds)
from .spec import CATEGORIES, COLORS, PALETTE, SHAPES
from .understanding import (Question, answer_question, parse_question, question_pairs, sample_caption,
                            relation_text_question, relation_which_question, sample_question, sample_relation_text_question, sample_text_question, sample_training_text)

__all__ = [
    "spec", "CATEGORIES", "COLORS", "PALETTE", "SHAPES",
    "Scene", "SceneObject", "PlacementError", "box_gap", "place_object", "place_objects", "random_scene",
    "relation_holds",
    "render", "downscale", "render_scales", "shape_mask",
    "ObjectSpec", "Requirement", "parse_prompt", "caption", "scene_for_prompt", "scene_satisfies",
    "sample_prompt", "sample_pair", "train_pairs", "with_colours", "heldout_prompts", "heldout_pairs", "is_held_out",
    "is_held_out_scene", "ALL_PROMPTS", "TRAIN_PROMPTS", "HELDOUT_PROMPTS",
    "Instruction", "EditTriplet", "parse_instruction", "check_instruction", "apply_instruction", "sample_edit",
    "edit_triplets",
    "Question", "parse_question", "answer_question", "sample_question", "question_pairs", "sample_caption",
    "sample_text_question", "sample_relation_text_question", "relation_text_question", "relation_which_question", "sample_training_text",
    "DetectedObject", "label_components", "parse_image", "classify_shape", "score_prompt", "geneval", "attribute_accuracy", "shape_binding", "relation_placement",
    "edit_correct", "edit_accuracy", "EDIT_OUTCOMES", "edit_outcome", "edit_outcomes", "RELATIONS", "edit_collateral", "reconstruction_correct", "reconstruction_accuracy", "scale_agreement", "cross_scale_consistency",
]
