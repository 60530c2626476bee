from django.urls import path

from bookings import sandbox_views
from bookings.api import views

tenant_urlpatterns = [
    path("packages", views.PackageListCreateView.as_view(), name="package-list"),
    path("packages/<int:pk>", views.PackageDetailView.as_view(), name="package-detail"),
    path("bookings", views.BookingListView.as_view(), name="booking-list"),
    path("bookings/<int:pk>", views.BookingDetailView.as_view(), name="booking-detail"),
    path("bookings/<int:pk>/cancel", views.BookingCancelView.as_view(), name="booking-cancel"),
]
public_urlpatterns = [
    path("packages", views.PublicPackageListView.as_view(), name="public-package-list"),
    path("availability", views.AvailabilityView.as_view(), name="availability"),
    path("checkouts", views.CheckoutCreateView.as_view(), name="checkout-create"),
]
urlpatterns = [
    path("api/webhooks/payments", views.PaymentWebhookView.as_view(), name="payment-webhook"),
    path("sandbox/checkout/<str:checkout_id>", sandbox_views.checkout_page, name="sandbox-checkout"),
    path("sandbox/checkout/<str:checkout_id>/<str:action>", sandbox_views.checkout_action, name="sandbox-action"),
]
