from tests.conftest import Account, job_body, resource_body


def test_job_is_matched_to_a_fitting_resource(provider: Account, customer: Account) -> None:
    created = provider.http.post("/resources", json=resource_body())
    assert created.status_code == 201, created.text
    job = customer.http.post("/jobs", json=job_body())
    assert job.status_code == 201, job.text
    detail = customer.http.get(f"/jobs/{job.json()['jobId']}").json()
    assert detail["status"] == "MATCHED"
    assert created.json()["resourceId"] in detail["matchedResources"]
