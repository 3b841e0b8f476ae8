"""Notes belong to their owner, in the HTML page and in the JSON API."""

from helpers import page, register


async def test_notes_are_private_to_their_owner(app):
    alice, bob = app.test_client(), app.test_client()
    await register(alice, "alice", display_name="Alice")
    await register(bob, "bob", display_name="Bob")

    response = await alice.post("/notes", form={"title": "Alice's secret", "body": "the <b>plan</b>"})
    assert response.status_code == 302
    assert response.headers["Location"] == "/"

    status, body = await page(alice, "/")
    assert "Alice&#39;s secret" in body
    assert "the &lt;b&gt;plan&lt;/b&gt;" in body  # escaped, not markup
    notes = (await (await alice.get("/api/notes")).get_json())["notes"]
    assert [(note["title"], note["body"]) for note in notes] == [("Alice's secret", "the <b>plan</b>")]

    status, body = await page(bob, "/")
    assert "Hi Bob" in body
    assert "secret" not in body
    assert (await (await bob.get("/api/notes")).get_json())["notes"] == []


async def test_anonymous_cannot_post_a_note(client):
    # To the login page, coming back to the page the form was on (a redirect cannot repeat the POST).
    response = await client.post("/notes", form={"title": "spam"}, headers={"Referer": "http://localhost/"})
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=%2F"
    without = await client.post("/notes", form={"title": "spam"})
    assert without.status_code == 302 and without.headers["Location"] == "/login"


async def test_a_note_needs_a_title(client):
    await register(client, "erin")
    response = await client.post("/notes", form={"title": "  "})
    assert response.status_code == 302
    body = (await page(client, "/"))[1]
    assert "A note needs a title" in body
    assert "No notes yet." in body
