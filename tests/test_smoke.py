from tests.conftest import bearer


def test_login_then_profile(make_user, login_as, client):
    user = make_user()
    tokens = login_as(user)
    response = client.get("/v1/profile", headers=bearer(tokens["token"]))
    assert response.status_code == 200
    assert response.json["user"]["username"] == "alice"
