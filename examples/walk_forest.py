# %% [markdown]
# # Walking a patient forest
#
# Two forms of one notebook: `walk_forest.py`, in percent format (open it in Jupyter with
# Jupytext or in VS Code, or run it as a script with `python examples/walk_forest.py`), and
# `walk_forest.ipynb`, the same cells plus an export with its progress bar, for Jupyter as is.
#
# It talks to the server named by `ORTHANC_URL` (with `ORTHANC_USERNAME` and
# `ORTHANC_PASSWORD`) when that is set; otherwise it starts a throwaway sandbox Orthanc
# loaded with synthetic sample data, stopped when the interpreter exits.

# %%
import datetime
import os

from kkorthanc import Orthanc
from kkorthanc.forest import build_patient_forest

if os.environ.get("ORTHANC_URL"):
    client = Orthanc()
else:
    from kkorthanc import synthetic
    from kkorthanc.sandbox import Sandbox

    sandbox = Sandbox(name="kk-walk").start()
    sandbox.load_synthetic(synthetic.SAMPLE)
    client = sandbox.client()

print(f"Orthanc {client.system.version} at {client.url}")

# %% [markdown]
# ## The whole forest in a handful of requests
#
# `build_patient_forest` pages through the four expanded level listings and links every
# resource to its parent and children. From then on, relations cost nothing.

# %%
before = client.request_count
forest = build_patient_forest(client)
print(
    f"{len(forest.patients)} patients, {len(forest.studies)} studies, "
    f"{len(forest.series)} series, {len(forest.instances)} instances "
    f"in {client.request_count - before} requests"
)

# %% [markdown]
# ## Walking down and up

# %%
loaded = client.request_count
for patient in forest.patients:
    born = patient.patient_birth_date.isoformat() if patient.patient_birth_date else "?"
    print(f"{patient.patient_id}  {patient.patient_name}  born {born}")
    for study in patient.studies:
        modalities = "/".join(sorted({s.modality or "?" for s in study.series}))
        count = sum(len(series.instances) for series in study.series)
        print(
            f"    {study.study_date}  {study.study_description or '':<16} {modalities:<6} {count}"
        )

instance = forest.instances[0]
print("an instance's patient:", instance.series.study.patient.patient_name)
assert client.request_count == loaded, "walking a forest sends no request"

# %% [markdown]
# ## The tree, as a terminal shows it

# %%
forest.print_tree(max_depth=3)

# %% [markdown]
# ## The tree, as a notebook shows it
#
# A cell ending with the forest shows it as a collapsible tree: patients sorted by PatientID,
# studies by date, series and instances by number, each with its counts. Values carry their
# labels (accession, series number, modality...); long UIDs are shortened, the full value
# shows on hover. Showing it costs no request.

# %%
forest  # noqa: B018

# %% [markdown]
# One study, series or instance shows the same way: where it sits, what is below it, and a
# table of every field it has.

# %%
study = forest.patients[0].studies[0]
study  # noqa: B018

# %% [markdown]
# ## Finding studies: on the server, or in the forest
#
# The same query runs as `POST /tools/find` or locally on the forest, with the same rules
# and the same answer; the local one sends nothing.

# %%
since_2010 = (datetime.date(2010, 1, 1), None)
on_server = client.find("study", StudyDate=since_2010)
before = client.request_count
in_forest = forest.find("study", study_date=since_2010)
assert client.request_count == before
assert [s.id for s in on_server] == [s.id for s in in_forest]
for study in in_forest:
    print(study.study_date, study.patient.patient_name, study.study_description)

# %% [markdown]
# ## DataFrames
#
# One row per resource, typed columns (dates are `datetime64`), parent IDs and UIDs included.

# %%
series = forest.to_dataframe("series")
summary = series.groupby("modality").agg(
    series=("id", "size"), instances=("num_instances", "sum"), patients=("patient_id", "nunique")
)
print(summary)

studies = forest.to_dataframe("study")
print(studies.groupby(studies["study_date"].dt.year)["id"].count().rename("studies per year"))
# each study row names its patient
print(studies[["study_date", "patient_id", "patient_name", "study_description"]].head())
