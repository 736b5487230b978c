"""A typed usage example: ``mypy --strict`` must accept it (see test_models.py).

It is never run; it shows that the field types reach static checkers and IDEs.
"""

from __future__ import annotations

import datetime

from kkorthanc import Instance, Orthanc, Patient, PatientForest, PersonName, Series, Study


def summary(client: Orthanc) -> list[str]:
    lines: list[str] = []
    patients: list[Patient] = client.patients()
    for patient in patients:
        name: PersonName | None = patient.patient_name
        family: str = name.family if name is not None else ""
        born: datetime.date | None = patient.patient_birth_date
        for study in patient.studies:
            one: Study = study
            d: datetime.date | None = one.study_date
            t: datetime.time | None = one.study_time
            for series in one.series:
                s: Series = series
                number: int | None = s.series_number
                orientation: tuple[float, ...] | None = s.image_orientation_patient
                for instance in s.instances:
                    i: Instance = instance
                    position: tuple[float, ...] | None = i.image_position_patient
                    size: int | None = i.file_size
                    lines.append(f"{family} {born} {d} {t} {number} {orientation}")
                    lines.append(f"{position} {size}")
    single: Series = client.series("some-id")
    many: list[Series] = client.series()
    lines.append(f"{single} {len(many)}")
    return lines


def typed_finds(client: Orthanc, forest: PatientForest) -> list[object]:
    """``find`` results are typed by the level, in every accepted spelling, and so are
    their relations."""
    studies: list[Study] = client.find("study", PatientName="DOE*")
    dates: list[datetime.date | None] = [s.study_date for s in studies]
    same: list[Study] = client.find("Study") + client.find("studies") + client.find(Study)
    series: list[Series] = forest.find("series", modality="CT")
    modalities = [s.modality for s in series]
    parents: list[Study] = [s.study for s in series]
    instances: list[Instance] = forest.find("instances")
    patients: list[Patient] = forest.find("Patients")
    births = [p.patient_birth_date for p in patients]
    first_of_study: tuple[Series, ...] = client.find("study")[0].series
    return [dates, same, modalities, parents, instances, births, first_of_study]
