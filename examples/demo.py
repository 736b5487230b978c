"""A tour of kkorthanc on a throwaway local Orthanc loaded with synthetic sample data."""

from __future__ import annotations

from kkorthanc import synthetic
from kkorthanc.sandbox import Sandbox


def main() -> None:
    with Sandbox(name="kk-demo") as sandbox:
        count = sandbox.load_synthetic(synthetic.SAMPLE)
        client = sandbox.client()
        info = client.system
        print(f"Orthanc {info.version} (REST API {info.api_version}) at {client.url}")
        print(f"  AET {info.dicom_aet} on DICOM port {info.dicom_port}; loaded {count} instances")
        print()
        for patient in client.patients():
            print(f"{patient.patient_id}  {patient.patient_name}  born {patient.patient_birth_date}")
            for study in patient.studies:
                print(f"    {study!r}")
        print(f"\n{client.request_count} requests in all")


if __name__ == "__main__":
    main()
