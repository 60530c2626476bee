from django.urls import path

from proposals.api import views

tenant_urlpatterns = [
    path("proposals", views.ProposalListCreateView.as_view(), name="proposal-list"),
    path("proposals/<int:pk>", views.ProposalDetailView.as_view(), name="proposal-detail"),
    path("proposals/<int:pk>/confirm", views.ProposalConfirmView.as_view(), name="proposal-confirm"),
    path("proposals/<int:pk>/reject", views.ProposalRejectView.as_view(), name="proposal-reject"),
]
