"""Wrong code that ``mypy --strict`` must reject: each line that ends in an error comment
must give that error code, and no other line may give one (see test_models.py).

It is never run.
"""

from __future__ import annotations

import datetime

from kkorthanc import Orthanc, PatientForest, Series


def wrong(client: Orthanc, forest: PatientForest) -> object:
    misspelt = client.find("study")[0].study_dat  # error: attr-defined
    other_level = client.find("study")[0].modality  # error: attr-defined
    wrong_list: list[Series] = forest.find("studies")  # error: assignment
    wrong_type: datetime.time = forest.find("Study")[0].study_date  # error: assignment
    through_relation = client.find("instance")[0].series.study_date  # error: attr-defined
    return misspelt, other_level, wrong_list, wrong_type, through_relation
