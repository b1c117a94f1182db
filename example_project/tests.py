# Your project's own tests, with MemoryLock: no lock server, a clean slate per test.
# Run them with: python manage.py test example_project
from django.test import TestCase, override_settings
from django.urls import reverse

from django_locks import locks


@override_settings(LOCKS={"default": {"BACKEND": "django_locks.backends.memory.MemoryLock"}})
class ReportLockTests(TestCase):
    def setUp(self):
        locks["default"].clear()  # no lock, no fencing counter left over by another test

    def test_a_rebuild_meanwhile_gets_409(self):
        url = reverse("api-rebuild-report", args=[7])
        with locks["default"].lock("report:7", ttl=60_000):  # as if another request held it
            busy = self.client.post(url)
        self.assertEqual(busy.status_code, 409)
        self.assertEqual(self.client.post(url).status_code, 202)  # released: free again

    def test_the_report_view_answers_423_while_locked(self):
        with locks["default"].lock("report:1", ttl=60_000):
            response = self.client.get(reverse("build-report", args=[1]), {"seconds": "0"})
        self.assertEqual(response.status_code, 423)
        self.assertIn("Retry-After", response.headers)
