from django.urls import path

from promos.api import views

SESSION = "redemption-sessions/<str:session_id>"

tenant_urlpatterns = [
    path("promo-codes", views.PromoCodeListView.as_view(), name="promo-code-list"),
    path("promo-codes/validate", views.PromoCodeValidateView.as_view(), name="promo-code-validate"),
    path("promo-codes/redeem", views.PromoCodeRedeemView.as_view(), name="promo-code-redeem"),
    path("promo-codes/<str:pk>", views.PromoCodeDetailView.as_view(), name="promo-code-detail"),
    path("promo-codes/<str:pk>/deactivate", views.PromoCodeDeactivateView.as_view(), name="promo-code-deactivate"),
    path("promo-codes/<str:pk>/activate", views.PromoCodeActivateView.as_view(), name="promo-code-activate"),
    path("promo-usages", views.PromoUsageListView.as_view(), name="promo-usage-list"),
    path("promo-usages/<str:pk>/void", views.PromoUsageVoidView.as_view(), name="promo-usage-void"),
    path("redemption-sessions", views.RedemptionSessionListView.as_view(), name="redemption-session-list"),
    path(f"{SESSION}", views.RedemptionSessionDetailView.as_view(), name="redemption-session-detail"),
    path(f"{SESSION}/consume", views.RedemptionSessionConsumeView.as_view(), name="redemption-session-consume"),
    path(f"{SESSION}/cancel", views.RedemptionSessionCancelView.as_view(), name="redemption-session-cancel"),
]
# Not under a tenant slug: the session id (and the secret) identify the shop's session.
urlpatterns = [
    path(
        f"api/public/{SESSION}/approve", views.RedemptionSessionApproveView.as_view(), name="redemption-session-approve"
    ),
    path(f"api/public/{SESSION}/reject", views.RedemptionSessionRejectView.as_view(), name="redemption-session-reject"),
]
