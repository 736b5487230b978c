"""A tour of kkorthanc on a throwaway local Orthanc loaded with synthetic sample data.

``make demo`` runs it: a sandbox server with the sample (4 patients, 48 instances), server
information, the patient forest and its tree, a tag query on the server and in the forest, and
DataFrame summaries. ``tour(client)`` runs the same steps against any server.
"""

from __future__ import annotations

import datetime

from kkorthanc import Orthanc, synthetic
from kkorthanc.forest import build_patient_forest
from kkorthanc.sandbox import Sandbox


def heading(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 76 - len(title)))


def tour(client: Orthanc) -> None:
    """Show what the client does against ``client``'s server (read-only)."""
    heading("The server")
    info = client.system
    stats = client.statistics()
    print(f"Orthanc {info.version} (REST API {info.api_version}) at {client.url}")
    print(f"AET {info.dicom_aet} on DICOM port {info.dicom_port}")
    print(
        f"{stats['CountPatients']} patients, {stats['CountStudies']} studies, "
        f"{stats['CountSeries']} series, {stats['CountInstances']} instances"
    )

    heading("The patient forest")
    before = client.request_count
    forest = build_patient_forest(client)
    print(f"loaded in {client.request_count - before} requests; walking it costs none\n")
    forest.print_tree(max_depth=3)

    heading("A tag query: CT studies since 2010 (a date range and a wildcard)")
    query = {"StudyDate": (datetime.date(2010, 1, 1), None), "StudyDescription": "*CT"}
    before = client.request_count
    on_server = client.find("study", query)
    sent = client.request_count - before
    in_forest = forest.find("study", query)
    print(f"server (POST /tools/find, {sent} request): {len(on_server)} studies")
    print(f"forest (local, {client.request_count - before - sent} requests): {len(in_forest)}")
    for study in sorted(in_forest, key=lambda s: s.study_date or datetime.date.min):
        print(f"  {study.study_date}  {study.patient.patient_name}  {study.study_description}")
    if [s.id for s in on_server] != [s.id for s in in_forest]:
        raise SystemExit("the server and the forest disagree")

    heading("DataFrames")
    series = forest.to_dataframe("series")
    per_modality = series.groupby("modality").agg(
        series=("id", "size"),
        instances=("num_instances", "sum"),
        patients=("patient_id", "nunique"),
    )
    print(per_modality.to_string())
    print()
    studies = forest.to_dataframe("study")
    studies["decade"] = (studies["study_date"].dt.year // 10) * 10
    print(studies.groupby("decade")["id"].count().rename("studies").to_string())
    print(f"\n{client.request_count} requests in all")


def main() -> None:
    with Sandbox(name="kk-demo") as sandbox:
        count = sandbox.load_synthetic(synthetic.SAMPLE)
        print(f"sandbox {sandbox.url}: loaded {count} synthetic instances")
        with sandbox.client() as client:
            tour(client)
        heading("The command line")
        print("kkorthanc sandbox start --sample   # a server that stays up, with export lines")
        print("kkorthanc tree --depth study       # the forest in a terminal")
        print("kkorthanc find study 'PatientName=M*' StudyDate=20100101-")
        print("kkorthanc --json stats             # machine-readable output")


if __name__ == "__main__":
    main()
