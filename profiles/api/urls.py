from django.urls import path

from profiles.api import views

tenant_urlpatterns = [
    path("profiles", views.ProfileListCreateView.as_view(), name="profile-list"),
    path("profiles/<int:pk>", views.ProfileDetailView.as_view(), name="profile-detail"),
    path("profiles/<int:pk>/restore", views.ProfileRestoreView.as_view(), name="profile-restore"),
    path("profiles/<int:pk>/history", views.ProfileHistoryView.as_view(), name="profile-history"),
    path("profiles/<int:pk>/ancestors", views.ProfileAncestorsView.as_view(), name="profile-ancestors"),
    path("profiles/<int:pk>/descendants", views.ProfileDescendantsView.as_view(), name="profile-descendants"),
    path("audit-log/<int:pk>", views.AuditEntryDetailView.as_view(), name="audit-entry-detail"),
    path("audit-log/<int:pk>/undo", views.AuditEntryUndoView.as_view(), name="audit-entry-undo"),
]
